"""One organisation's node: trains, calibrates and serves the head for its own generator, and
answers the Flower ClientApp's messages. Run by each organisation; never imports `coordinator`.
"""
