"""chronofeat extractors: one module per feature family, each registered by name.

``create_extractor("bovw", descriptor="sift", vocab_size=500)`` builds one; ``list_extractors()`` lists them.
"""

from extractors._registry import (
    build_from_options,
    cli_aliases,
    create_extractor,
    extractor_class,
    list_extractors,
    register_cli_alias,
    register_extractor,
)

__all__ = [
    "register_extractor", "create_extractor", "list_extractors", "extractor_class",
    "register_cli_alias", "cli_aliases", "build_from_options",
]
