"""A torchrun worker for tests/test_distributed.py: ``medseg`` in which rank 0 cannot write the
batch summary (the disk fills up after every case is done), while rank 1 waits for it. Every
path that could block the summary is refused before any work, so only a full disk is left, and
that cannot be made on demand; hence the patch: it replaces nothing but rank 0's CSV writer."""

import errno
import os

import medseg.batch as batch
from medseg.errors import MedsegError


def _full_disk(path, *args, **kwargs):
    raise MedsegError(f"{path}: cannot write ({os.strerror(errno.ENOSPC)})")


if os.environ.get("RANK") == "0":
    batch.write_csv = _full_disk

if __name__ == "__main__":
    from medseg.cli import main

    main()
