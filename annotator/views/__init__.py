"""Pictures of results: matplotlib figures and HTML pages. They draw what they are given."""
