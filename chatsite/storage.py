from servestatic.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Compressed, hashed static files; ES module imports point at hashed names too,
    so a deploy cannot mix a new module with a cached old one."""

    support_js_module_import_aggregation = True
