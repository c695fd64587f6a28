import { ConfigError, loadConfigFile } from '../config/config.js';
import { modelsDirectory } from '../models/hub-source.js';
import { formatBytes, progressFor } from '../models/progress.js';
import { PullError, pullModel } from '../models/pull.js';

/** `kiln pull <source | configured id>`: download into the model cache; exits 1 with the reason when it cannot. */
export async function pullCommand(targets: string[], configFile: string | undefined): Promise<void> {
  if (targets.length !== 1) throw new ConfigError('kiln pull takes one hf:owner/repo/file.gguf source, URL or configured model id');
  const target = targets[0]!;
  const config = configFile !== undefined ? await loadConfigFile(configFile) : undefined;
  let source = target;
  let dest: string | undefined;
  if (!/^(hf:|https?:\/\/)/.test(target)) {
    if (config === undefined) throw new ConfigError(`'${target}' is not hf:owner/repo/file.gguf or a URL; to pull a configured model id, give --config`);
    const model = config.models.find((entry) => entry.id === target);
    if (model === undefined) throw new ConfigError(`no model '${target}' in ${configFile}`);
    if (model.source === undefined) throw new ConfigError(`model '${target}' has no 'source' to pull from`);
    source = model.source;
    dest = model.file;
  }
  try {
    const result = await pullModel(source, { modelsDir: modelsDirectory(config?.models_dir), dest, progress: progressFor(process.stderr) });
    const how = result.alreadyPresent
      ? 'already present'
      : `downloaded ${formatBytes(result.bytesReceived)} in ${result.seconds.toFixed(1)} s (${formatBytes(result.bytesReceived / Math.max(result.seconds, 1e-3))}/s)`;
    process.stdout.write(`${result.path}\n${how}, ${formatBytes(result.size)}${result.verified ? ', sha256 verified' : ''}\n`);
  } catch (error) {
    if (!(error instanceof PullError)) throw error;
    process.stderr.write(`kiln pull: ${error.message}\n`);
    process.exit(1);
  }
}

