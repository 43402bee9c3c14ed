"""Drug outcomes defined as data: rule files (``rules``) and their application to a snapshot (``apply``)."""
