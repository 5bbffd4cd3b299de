"""Dataset rows, their validation, and the builders that make them.

- `rows`: the row model, `load_rows` / `write_rows`, `DatasetError`.
- `validate`: `validate_files` (schema, duplicates, train/val overlap, evidence paths).
- `build`: the synthetic filings dataset from a corpus's facts.jsonl.
- `oracle`: recompute a synthetic row's answer from its documents' text alone.
- `tatqa`: import TAT-QA as a corpus of report excerpts plus rows.
"""

from __future__ import annotations

from envs.data.build import BuildSummary, build_command, build_dataset
from envs.data.oracle import OracleError, oracle_answer_from_texts, oracle_plan
from envs.data.rows import DatasetError, Expected, Row, RowMetadata, load_rows, write_rows
from envs.data.tatqa import ImportSummary, import_tatqa, import_tatqa_command
from envs.data.validate import ValidationReport, validate_command, validate_files

__all__ = [
    "BuildSummary",
    "DatasetError",
    "Expected",
    "ImportSummary",
    "OracleError",
    "Row",
    "RowMetadata",
    "ValidationReport",
    "build_command",
    "build_dataset",
    "import_tatqa",
    "import_tatqa_command",
    "load_rows",
    "oracle_answer_from_texts",
    "oracle_plan",
    "validate_command",
    "validate_files",
    "write_rows",
]
