"""`sftlab serve`: an OpenAI-compatible server over sftlab.infer, with a SQLite request/feedback log for the flywheel.

protocol.py  the OpenAI chat request → (conversation, params) with 400s naming the field; response/chunk shapes
batcher.py   one worker thread that groups waiting requests into one generate call
log.py       the SQLite (WAL) request + feedback log and its export to canonical records
app.py       the FastAPI app and how to run it
"""
