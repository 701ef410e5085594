"""mmface4d_stream: streaming capture and 3D face reconstruction for Azure Kinect RGB-D cameras.

The library holds every algorithm and file format; `actors/` and `graphs/` wire it into Ray.
"""

__version__ = "0.1.0"
