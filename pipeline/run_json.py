"""Reading a run folder's run.json with errors that say what to do (shared by import-results and profile)."""
from __future__ import annotations

from pipeline import strict_json
from pathlib import Path

from pipeline.errors import ConfigError, DataError


def read_run(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no run.json here", hint="give the --out folder of `python -m pipeline run`")
    try:
        run = strict_json.loads(path.read_text(encoding="utf-8"), path,
                                hint="run the pipeline again (it rebuilds run.json)")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})", hint="run the pipeline again") from None
    if not isinstance(run, dict) or not isinstance(run.get("artifacts"), list):
        raise DataError(f"{path}: has no 'artifacts' list", hint="run the pipeline again")
    return run
