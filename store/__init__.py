"""chronofeat store: the only package that touches disk (layout, Parquet tables, DuckDB, ingestion, artifacts).

Submodules are imported explicitly (``from store.tables import write_part``) so that importing one
does not pull in DICOM, DuckDB or torch.
"""
