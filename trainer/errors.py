"""Exception tree of the trainer package.

TrainerError
├── ConfigError         the run configuration cannot work (names the key and the fix)
├── TrainingStopped     a guard tripped: NaN loss, KL past the configured bound
└── CheckpointError     nothing to resume from, or a checkpoint of another run
"""

from __future__ import annotations


class TrainerError(Exception):
    pass


class ConfigError(TrainerError):
    pass


class TrainingStopped(TrainerError):
    pass


class CheckpointError(TrainerError):
    pass
