"""Offline stand-in for the get-pip.py that ansible-test downloads.

ansible-test bootstraps pip in its sanity virtual environments from a host
these machines cannot reach. It first looks in ~/.ansible/test/cache/;
scripts/test.sh puts this file there. It bootstraps pip with ensurepip and
installs what ansible-test asked for from the package index.
"""

import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
