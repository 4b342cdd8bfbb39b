"""The audience a marketer manages: finding a person by email (``lookup``), exporting a list or a segment,
custom fields (``fields``) and the CSV import (``importer``)."""
