"""ReDimNet-B3 (models/ReDimNetFamily.py; stage table SIZES["B3"]): the authors' size B3, 72 mel bins."""
from models.ReDimNetFamily import REDIMNET_OPTIONS, redimnet

OPTIONS = dict(REDIMNET_OPTIONS)
MainModel = redimnet("B3")
