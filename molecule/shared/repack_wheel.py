"""Make a wheelhouse whose gatewayha wheel is a new build of the same version.

    python repack_wheel.py SRC_WHEELHOUSE DEST_WHEELHOUSE

The dependencies are hard-linked (or copied); the gatewayha wheel is rewritten with the
same files and a new timestamp, as a rebuild from the same sources would be. Its bytes
differ, so the gatewayha role sees the wheelhouse copy change and reinstalls and
restarts the node: the upgrade test's "new release" without bumping the version.
Prints the new wheel's path and sha256.
"""

import hashlib
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path


def main() -> int:
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    wheels = sorted(src.glob("gatewayha-*.whl"))
    if len(wheels) != 1:
        print(f"expected one gatewayha wheel in {src}, found {wheels}", file=sys.stderr)
        return 1
    for path in src.iterdir():
        if path.is_file() and path not in wheels:
            try:
                os.link(path, dest / path.name)
            except OSError:
                shutil.copy2(path, dest / path.name)
    stamp = time.localtime()[:6]
    new = dest / wheels[0].name
    with zipfile.ZipFile(wheels[0]) as zin, zipfile.ZipFile(new, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            copy = zipfile.ZipInfo(info.filename, date_time=stamp)
            copy.external_attr = info.external_attr
            copy.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(copy, data)
    digest = hashlib.sha256(new.read_bytes()).hexdigest()
    print(f"{new} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
