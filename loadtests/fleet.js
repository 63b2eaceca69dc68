// Fleet stampede: like stampede.js, but requests go round robin over several cachegate
// instances (BASE_URLS) in front of one origin; figures are for the whole fleet. See README.md.
import { BASE_URLS, hotKey } from './lib.js';

const t = hotKey({ title: 'fleet', urls: BASE_URLS, defaultVus: 200 });

export const options = t.options;
export const setup = t.setup;
export default t.run;
export const teardown = t.teardown;
export const handleSummary = t.handleSummary;
