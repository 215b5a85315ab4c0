"""napari plugin for medseg (npe2). A thin layer over :mod:`medseg`; contributions arrive with the plugin issue."""
