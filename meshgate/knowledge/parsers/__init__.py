"""One module per file format; `meshgate.knowledge.parsing` picks the parser."""
