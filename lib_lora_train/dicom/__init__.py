"""DICOM reading, de-identification and pixel conversion."""
