"""The `ckpt` command line: a thin layer over the SDK (`client/`) and storage (`storage/`)."""
