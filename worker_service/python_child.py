"""The command line of a Python child process that runs one of our modules.

`python -m module` puts the working directory first on the child's sys.path. Run from a
checkout's root, that makes our kernels/ folder the top-level `kernels` module, which shadows
Hugging Face's `kernels` package: transformers (>= 5.25 depends on it) then fails to import. A
child made here runs the module without the working directory on sys.path (as the `yaie` console
script does), keeping its working directory for relative paths.
"""

from __future__ import annotations

import sys

# Python 3.10 has no -P: the same, by hand (the -c script's own sys.path[0] is the working dir).
_RUN_MODULE = (
    "import runpy, sys; sys.path.pop(0); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def module_command(module: str, *args: str) -> list[str]:
    """[python, ..., module, *args]: runs module as __main__ with args as its sys.argv[1:]."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", _RUN_MODULE, module, *args]
