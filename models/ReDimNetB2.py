"""ReDimNet-B2 (models/ReDimNetFamily.py; stage table SIZES["B2"]): the authors' size B2, 72 mel bins."""
from models.ReDimNetFamily import REDIMNET_OPTIONS, redimnet

OPTIONS = dict(REDIMNET_OPTIONS)
MainModel = redimnet("B2")
