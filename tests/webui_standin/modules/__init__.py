"""Stand-in for the WebUI's ``modules`` package (see ../README.md)."""
