"""The coordinator's side of a Flower run, as plain functions the ServerApp (`coordinator/server_app.py`)
strings together: the run's verdict (`results`), sending and collecting messages (`messaging`),
the head round (`head_round`), FedAvg fine-tuning of the primary module (`fedavg`), the whole run (`run`).
"""
