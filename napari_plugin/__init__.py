"""napari plugin for medseg (npe2): reader, writer, Segment widget and sample data.

A thin layer over :mod:`medseg`: scans are read with :func:`medseg.io.load_scan`, shown in
:mod:`medseg.geometry`'s display orientation (world mm, radiological), segmented with a
:class:`medseg.inference.Predictor` (prepared once, kept between clicks), saved with
:func:`medseg.io.save_mask` and fine-tuned with :func:`medseg.training.train`. Installed as the
package ``medseg_napari`` (this folder, mapped in pyproject.toml).
"""

__all__: list[str] = []
