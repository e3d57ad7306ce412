"""Reading documents in and writing entities out (and reading that output back)."""
