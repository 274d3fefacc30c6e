"""The detloss lab: see the losses work (optional extra ``detloss[lab]``).

- :mod:`.simulate`  the Distance-IoU paper's simulation experiment (``detloss simulate``)
- :mod:`.landscape` value and gradient maps of the IoU family (``detloss plot``)
- :mod:`.demo`      a tiny detector trained end to end on synthetic shapes (``detloss demo``)

The lab sits on top of the library: it imports anything in detloss, and only ``detloss.cli``
imports it, lazily. matplotlib, tqdm and pycocotools are imported inside the functions that need them.
"""
