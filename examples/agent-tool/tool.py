"""The code an LLM tool call would run: it reads its task from the
environment voidbox sets and prints a JSON result."""
import json
import os
import platform

prompt = os.environ.get("VOIDBOX_AGENT_PROMPT", "")
result = sum(i * i for i in range(1, 11))
print(json.dumps({
    "prompt": prompt,
    "result": result,
    "model": os.environ.get("VOIDBOX_LLM_MODEL"),
    "python": platform.python_version(),
    "uid": os.getuid(),
}))
