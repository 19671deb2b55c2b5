"""Stream a multipart upload straight into a private folder inside the data home.

Starlette's ``request.form()`` spools each part above 1 MB to the system temporary folder,
so identifiable DICOMs would sit in ``/tmp`` before anything else happened to them. Here the
body is parsed chunk by chunk with python-multipart's low-level parser and every file part of
field ``files`` is written directly to ``<folder>/NNNN.upload``; the client's file name (which
may carry a patient name) is never stored.
"""

import email.message

FIELD = "files"


class UploadError(ValueError):
    """The body is not a usable multipart/form-data upload."""


def _parser_class():
    try:
        from python_multipart.multipart import MultipartParser
    except ImportError:  # python-multipart < 0.0.13 (the WebUI's gradio 3 era) names it ``multipart``
        from multipart.multipart import MultipartParser
    return MultipartParser


def boundary_of(content_type):
    """The multipart boundary of a Content-Type header, or raise :class:`UploadError`."""
    message = email.message.Message()
    message["content-type"] = content_type or ""
    if message.get_content_type() != "multipart/form-data" or not message.get_param("boundary"):
        raise UploadError("the request must be multipart/form-data with field 'files'")
    return message.get_param("boundary")


class _Sink:
    """Callbacks of the parser: one output file per file part of the ``files`` field."""

    def __init__(self, folder, max_files):
        self.folder, self.max_files = folder, max_files
        self.paths, self._header, self._headers, self._out = [], b"", {}, None

    def on_part_begin(self):
        self._headers, self._header, self._out = {}, b"", None

    def on_header_field(self, data, start, end):
        self._header += data[start:end]

    def on_header_value(self, data, start, end):
        key = self._header.decode("latin-1").lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def on_header_end(self):
        self._header = b""

    def on_headers_finished(self):
        disposition = email.message.Message()
        disposition["content-disposition"] = self._headers.get("content-disposition", b"").decode("latin-1")
        if disposition.get_param("name", header="content-disposition") != FIELD:
            return
        if disposition.get_param("filename", header="content-disposition") is None:
            return
        if len(self.paths) >= self.max_files:
            raise UploadError(f"at most {self.max_files} files per upload")
        path = self.folder / f"{len(self.paths) + 1:04d}.upload"
        self._out = open(path, "xb")
        self.paths.append(path)

    def on_part_data(self, data, start, end):
        if self._out is not None:
            self._out.write(data[start:end])

    def on_part_end(self):
        self.close()

    def close(self):
        if self._out is not None:
            self._out.close()
            self._out = None


async def stream_files(request, folder, max_files=10000):
    """Write every file of field ``files`` into ``folder``; returns their paths in order.

    Raises:
        UploadError: not multipart, or too many files.
    """
    sink = _Sink(folder, max_files)
    callbacks = {name: getattr(sink, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end")}
    parser = _parser_class()(boundary_of(request.headers.get("content-type")), callbacks)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    finally:
        sink.close()
    return sink.paths
