"""Makes pyiceberg's S3 writes work against the moto server the S3 tests
start (moto[server] 5.2.1, scripts/setup).

moto 5.2.1 answers CompleteMultipartUpload with a wrong XML root element
(moto issue 10055, fixed after 5.2.1), which pyarrow's S3 client takes for an
error, and pyarrow's S3 output streams use a multipart upload for every file,
however small. With `allow_delayed_open=True` pyarrow sends a file below its
part size (several MiB; the test tables' files are far smaller) as one
PutObject instead. pyiceberg 0.12 has no property for that option, so its
`pyarrow.fs.S3FileSystem` lookup gets a constructor that sets it.
Imported by read_iceberg.py, iceberg_append.py and iceberg_rest.py.
"""
import pyarrow.fs

_S3FileSystem = pyarrow.fs.S3FileSystem


def _s3_with_small_puts(*args, **kwargs):
    kwargs.setdefault("allow_delayed_open", True)
    return _S3FileSystem(*args, **kwargs)


def install():
    if pyarrow.fs.S3FileSystem is _S3FileSystem:
        pyarrow.fs.S3FileSystem = _s3_with_small_puts
