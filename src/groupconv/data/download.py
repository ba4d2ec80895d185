"""Fetching an archive from its official source, failing at once and saying where to put it when offline."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from .base import DatasetError

TIMEOUT_SECONDS = 10


def download_file(url: str, destination: Path, md5: str | None = None) -> Path:
    """Download `url` to `destination` (written to a temporary name, checked, then renamed)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(destination.name + ".part")
    print(f"downloading {url} to {destination}")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, open(temporary, "wb") as file:
            while chunk := response.read(1 << 20):
                file.write(chunk)
    except (OSError, ValueError) as error:  # URLError, timeouts and refused connections are OSErrors
        temporary.unlink(missing_ok=True)
        raise DatasetError(f"could not download {url} ({error}); download it by hand and put it at "
                           f"{destination}") from None
    if md5 is not None and file_md5(temporary) != md5:
        temporary.unlink(missing_ok=True)
        raise DatasetError(f"the download of {url} is corrupt (md5 differs from {md5}); try again or put the "
                           f"file at {destination}")
    os.replace(temporary, destination)
    return destination


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
