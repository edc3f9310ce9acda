"""Scheduler tests import fake_worker.py (the fake worker and an engine harness) from here."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # `import fake_worker` under --import-mode=importlib
