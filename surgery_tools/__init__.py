"""Clients of surgery_lib that build the project's own assets: the toy composite data, the toy
CLIPs' training and validation, and the real annotated photos. Never imported by the library."""
