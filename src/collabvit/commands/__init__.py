"""One module per ``collabvit`` sub-command: ``HELP``, ``add_arguments(parser)``, ``run(args)``."""
