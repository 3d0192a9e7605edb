// The WebCrypto adaptor moved to the SPIFFE core with the Signer it adapts.
export { signerCrypto, signerCryptoKey } from '../spiffe/webcrypto.js'
