"""The study page for people: ``/`` (studies) and ``/studies/{id}`` (one study).

Server-side templates give the structure; a little JavaScript of the package's
own (``static/``) fills it from the same ``/v1`` endpoints a script would call,
with the bearer token the person signs in with, kept in the tab's sessionStorage.
"""
