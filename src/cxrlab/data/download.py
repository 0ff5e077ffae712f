"""``cxrlab download``: fetch the Kaggle dataset with kagglehub (needs internet and, for
some datasets, Kaggle credentials in ``~/.kaggle/kaggle.json`` or
``KAGGLE_USERNAME``/``KAGGLE_KEY``)."""

from __future__ import annotations

from pathlib import Path

from cxrlab.data.discover import DatasetIndex, discover
from cxrlab.errors import CxrlabError

KAGGLE_HANDLE = "prashant268/chest-xray-covid19-pneumonia"


def manual_hint(handle: str, out: Path) -> str:
    return (
        f"download https://www.kaggle.com/datasets/{handle} by hand and unzip it into {out} "
        f"so that {out}/Data/train/<CLASS>/ exists"
    )


def download_dataset(
    out: str | Path, handle: str = KAGGLE_HANDLE, *, force: bool = False
) -> DatasetIndex:
    """Download ``handle`` into ``out`` and return its index; one-line error when it cannot."""
    out = Path(out).expanduser()
    try:
        import kagglehub

        path = kagglehub.dataset_download(handle, output_dir=str(out), force_download=force)
    except Exception as exc:  # kagglehub raises requests, HTTP and its own errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "resolve" in reason or "Connection" in type(exc).__name__:
            reason = "no internet connection"
        raise CxrlabError(
            f"cannot download Kaggle dataset '{handle}' ({reason[:160]}); "
            f"{manual_hint(handle, out)}"
        ) from exc
    return discover(path)
