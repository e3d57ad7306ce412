"""Review: label a sample of one's own documents in a local page, least sure sentences first."""
