"""The demos: the paper's workflow offline in one process (`offline`), and the whole network as
real processes (`network`). Only `attribnet demo` uses them.
"""
