"""ReDimNet2-B5 (models/ReDimNet2Family.py; stage table SIZES["B5"]): the authors' size B5, 72 mel bins."""
from models.ReDimNet2Family import REDIMNET2_OPTIONS, redimnet2

OPTIONS = dict(REDIMNET2_OPTIONS)
MainModel = redimnet2("B5")
