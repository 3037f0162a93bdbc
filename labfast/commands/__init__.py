"""The ``labfast`` sub-commands, one thin module each (``add_arguments(parser)`` and ``run(args)``)
over the library; nothing imports them but ``labfast.cli``."""
