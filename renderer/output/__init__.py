"""The output stage: where a run's images and metadata go, written so that nothing is lost.

Modules:
  files    atomic, durable writes; image verification; the group fsync off the event loop
  storage  the output root: a local directory or an S3 bucket (create-only puts), one interface
  source   a run as the tools read it: its state (SQLite or PostgreSQL) and its output
  dataset  metadata.jsonl and the dataset card (a Hugging Face ImageFolder in data/)
  export   Parquet shards and WebDataset tars of a finished run

Nothing is imported here: files loads Pillow, storage loads obstore only for S3.
"""
