"""Built-in converters, one module per source. Each registers under the ``phi3v.converters`` entry-point group."""
