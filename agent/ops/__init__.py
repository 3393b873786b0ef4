"""Operations the CLI and the serial console share: status, queue, echo, find, retrieve.

Each operation is a function that does the work and returns a frozen result object; the
CLI prints it, the console turns it into a reply. Neither parses the other's text.
"""
