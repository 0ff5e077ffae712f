"""``cxrlab serve``: a local web page and JSON API where a person drops films and sees the model's
answer, its Grad-CAM and how far to trust it (:func:`cxrlab.serve.app.create_app`)."""
