"""Host-side converters from published checkpoint layouts to the layouts moegen kernels read."""
