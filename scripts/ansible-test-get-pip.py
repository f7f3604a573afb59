"""Offline stand-in for the get-pip.py that ansible-test downloads.

ansible-test bootstraps pip in its sanity venvs with a script fetched from a
host this project's machines cannot reach. This does the same from Python's
own ensurepip, then hands the remaining arguments to pip. scripts/bootstrap.sh
installs it where ansible-test looks for its cached copy.
"""
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True,
               stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
sys.exit(subprocess.run([sys.executable, "-m", "pip", "install"] + args, check=False).returncode)
