"""`sftlab serve`: an OpenAI-compatible server over sftlab.infer, with a SQLite request/feedback log for the flywheel.

protocol.py    the contract: pydantic request/response/error models, validation errors -> 400 naming the field,
               the conversation rules the schema cannot express
body.py        request bodies decoded so no input raises past the handler (size, depth, NaN, lone surrogates)
tool_calls.py  tool-call parsers by name (hermes) and the splitter that turns model text into OpenAI tool_calls
chat.py        the chat-completions path: checks -> batcher -> tool calls -> JSON or SSE -> one log row
batcher.py     one worker thread that groups waiting requests into one generate call
log.py         the SQLite (WAL) request + feedback log and its export to canonical records (+ rejects)
routes.py      the HTTP routes, thin, typed with the protocol models
app.py         the FastAPI app: state, error handlers, the published schema; running it in a thread
"""
