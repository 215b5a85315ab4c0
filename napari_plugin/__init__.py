"""napari plugin for medseg (npe2): reader, writer, Segment widget and sample data.

A thin layer over :mod:`medseg`: scans are read with :func:`medseg.io.load_scan`, shown with
:mod:`medseg.display`'s world geometry, segmented with a :class:`medseg.inference.Predictor` (kept between clicks), saved
with :func:`medseg.io.save_mask` and fine-tuned with :func:`medseg.training.train`.
"""

__all__: list[str] = []
