import pytest


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def location(request, tmp_path):
    """``(uri, storage_options)`` of an empty store on each backend."""
    if request.param == "local":
        return str(tmp_path / "store"), None
    bucket, options = request.getfixturevalue("s3_bucket")
    return f"{bucket}/run", options
