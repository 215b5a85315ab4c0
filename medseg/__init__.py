"""medseg: slice-wise SegNet segmentation of CT and MRI."""
__version__ = "0.1.0"
