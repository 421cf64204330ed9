"""Metrics go to TensorBoard (default), ClearML (when ``[logger] log_to_clearml = true``) and a
``metrics.jsonl`` file in the run folder that the demo's plots and tests read.

ClearML is imported only when asked for, so a machine without it never pays for it; when it
is asked for and missing, the error says which extra to install.
"""

from __future__ import annotations

import json
from pathlib import Path

from asrlib.config import LoggerConfig


class MissingExtraError(RuntimeError):
    pass


class RunLogger:
    def __init__(self, cfg: LoggerConfig, out_dir: str | Path, run_config: dict | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.tb = None
        self.clearml = None
        if cfg.log_to_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        if cfg.log_to_clearml:
            try:
                from clearml import Task
            except ImportError:
                raise MissingExtraError(
                    "[logger] log_to_clearml = true, but the clearml package is not installed: "
                    "pip install 'asrlib[clearml]' (or set log_to_clearml = false)"
                ) from None
            task = Task.init(project_name=cfg.clearml_project, task_name=cfg.clearml_task or self.out_dir.name)
            if run_config:
                task.connect(run_config)
            self.clearml = task.get_logger()

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self._jsonl.flush()
        for key, v in values.items():
            if self.tb is not None:
                self.tb.add_scalar(f"{split}/{key}", v, step)
            if self.clearml is not None:
                self.clearml.report_scalar(title=split, series=key, value=v, iteration=step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)
        if self.clearml is not None:
            self.clearml.report_text(f"[{step}] {tag}: {text}")

    def close(self) -> None:
        self._jsonl.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
