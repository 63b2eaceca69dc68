// Stampede: VUS users hammer one hot key that expires every max-age seconds. A cache that
// coalesces and refreshes in the background lets about one request per expiry reach the origin,
// never two at once. See README.md.
import { BASE_URL, hotKey } from './lib.js';

const t = hotKey({ title: 'stampede', urls: [BASE_URL], defaultVus: 200 });

export const options = t.options;
export const setup = t.setup;
export default t.run;
export const teardown = t.teardown;
export const handleSummary = t.handleSummary;
