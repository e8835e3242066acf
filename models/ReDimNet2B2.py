"""ReDimNet2-B2 (models/ReDimNet2Family.py; stage table SIZES["B2"]): the authors' size B2, 72 mel bins."""
from models.ReDimNet2Family import REDIMNET2_OPTIONS, redimnet2

OPTIONS = dict(REDIMNET2_OPTIONS)
MainModel = redimnet2("B2")
